package android.app;
public class Activity extends android.content.Context {
  public android.content.res.AssetManager getAssets() { return null; }
  public String getPackageName() { return null; }
  public java.io.File getCacheDir() { return null; }
  public java.io.File getFilesDir() { return null; }
  public android.content.ContentResolver getContentResolver() { return null; }
  protected void onCreate(android.os.Bundle b) {}
  public void setContentView(int id) {}
  public <T extends android.view.View> T findViewById(int id) { return null; }
  public final String getString(int id, Object... args) { return null; }
}
