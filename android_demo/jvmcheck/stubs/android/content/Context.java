package android.content;
public abstract class Context {
  public abstract android.content.res.AssetManager getAssets();
  public abstract String getPackageName();
  public abstract java.io.File getCacheDir();
  public abstract java.io.File getFilesDir();
  public abstract ContentResolver getContentResolver();
}
