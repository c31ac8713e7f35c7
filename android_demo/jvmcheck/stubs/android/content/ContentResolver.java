package android.content;
public abstract class ContentResolver {
  public final String getType(android.net.Uri uri) { return null; }
  public final java.io.InputStream openInputStream(android.net.Uri uri) throws java.io.FileNotFoundException { return null; }
}
